//! The Prometheus source against the real server (Debian package `prometheus`) scraping
//! the test workload every second, and through the daemon end to end. Answers the real
//! server cannot give (a hang, a proxy's error page, garbage) come from local fakes.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use rearguard::config::selector::{parse_matchers, parse_selector};
use rearguard::config::{Config, HttpAuth, PromQuery, PrometheusSpec, TlsSpec};
use rearguard::daemon::Event;
use rearguard::engine::{Effect, Measure, Outcome, ReadingState};
use rearguard::source::prometheus::PrometheusSource;
use secrecy::SecretString;

use crate::promstack::{self, Server};
use crate::releases::Releases;
use crate::running::{Running, start};
use crate::support::{self, Misbehave};
use crate::workload::{Behaviour, Workload};

/// The harness itself: a real Prometheus scrapes the workload and answers a query.
#[tokio::test]
async fn real_prometheus_scrapes_the_test_workload() {
    let w = Workload::start(Behaviour::default()).await;
    let prom = promstack::prometheus(&[w.target()], "1s", None, None).await;
    let client = rearguard::http::client();
    let url = format!("{}/api/v1/query?query=up", prom.url());
    support::poll_until_async(Duration::from_secs(20), || {
        let client = client.clone();
        let url = url.clone();
        async move {
            let Ok(r) = client.get(&url).send().await else {
                return false;
            };
            r.text()
                .await
                .is_ok_and(|t| t.contains("\"value\"") && t.contains("\"1\""))
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "prometheus never scraped the workload; log:\n{}",
            prom.log()
        )
    });
}

// ---------------------------------------------------------------------------------------
// Helpers

const TIMEOUT: Duration = Duration::from_secs(2);

fn spec(url: &str, query: PromQuery, window: Duration) -> PrometheusSpec {
    PrometheusSpec {
        url: url.parse().expect("a test url"),
        query,
        window,
        auth: None,
        tls: TlsSpec::default(),
    }
}

fn error_rate(errors: &str) -> PromQuery {
    PromQuery::ErrorRate {
        requests: parse_selector(r#"http_requests_total{job="workload"}"#).unwrap(),
        errors: parse_matchers(errors).unwrap(),
    }
}

fn p95() -> PromQuery {
    PromQuery::Latency {
        histogram: parse_selector("http_request_duration_seconds_bucket").unwrap(),
        quantile: 0.95,
    }
}

fn expr(text: &str) -> PromQuery {
    PromQuery::Expr(text.to_owned())
}

fn source(prom: &Server, query: PromQuery) -> PrometheusSource {
    PrometheusSource::new(&spec(&prom.url(), query, Duration::from_secs(5)), TIMEOUT)
}

/// The workload and a Prometheus scraping it every second.
async fn stack(behaviour: Behaviour) -> (Workload, Server) {
    let w = Workload::start(behaviour).await;
    let prom = promstack::prometheus(&[w.target()], "1s", None, None).await;
    (w, prom)
}

/// Samples `source` every 200 ms until a reading satisfies `want`, and returns it; at
/// the deadline the test fails with the readings seen.
async fn reading_until(
    source: &PrometheusSource,
    secs: u64,
    what: &str,
    want: impl Fn(&ReadingState) -> bool,
) -> ReadingState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let r = source.sample().await;
        if want(&r) {
            return r;
        }
        if seen.last() != Some(&r) {
            seen.push(r);
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "no reading with {what} within {secs}s for {:?}; distinct readings seen: {seen:#?}",
                source.promql()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rate_of(r: &ReadingState) -> Option<(f64, f64)> {
    match r {
        ReadingState::Value(Measure::Rate { errors, requests }) => Some((*errors, *requests)),
        _ => None,
    }
}

fn number_of(r: &ReadingState) -> Option<f64> {
    match r {
        ReadingState::Value(Measure::Number(v)) => Some(*v),
        _ => None,
    }
}

fn source_error(r: &ReadingState) -> &str {
    match r {
        ReadingState::SourceError(e) => e,
        other => panic!("expected a source error, got {other:?}"),
    }
}

/// Waits until Prometheus has scraped the workload three times, enough for `increase()`
/// and `rate()` to have a value.
async fn until_scraped(prom: &Server) {
    let s = source(
        prom,
        expr(r#"count_over_time(http_requests_total{code="200"}[10s])"#),
    );
    reading_until(&s, 30, "three scrapes", |r| {
        number_of(r).is_some_and(|n| n >= 3.0)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The built-in signals against the real server

#[tokio::test]
async fn error_rate_tracks_the_workload_error_fraction_and_request_count() {
    let (_w, prom) = stack(Behaviour {
        rps: 100.0,
        error_fraction: 0.08,
        latency: 0.02,
    })
    .await;
    let s = source(&prom, error_rate(r#"code=~"5..""#));
    // 100 requests a second over a 5s window; Prometheus extrapolates to the window.
    let r = reading_until(&s, 30, "8% of about 500 requests", |r| {
        rate_of(r)
            .is_some_and(|(e, n)| (350.0..=650.0).contains(&n) && (0.06..=0.10).contains(&(e / n)))
    })
    .await;
    let (errors, requests) = rate_of(&r).unwrap();
    assert!(errors > 0.0 && errors < requests, "{r:?}");
}

#[tokio::test]
async fn error_rate_is_zero_when_the_error_series_does_not_exist() {
    let (_w, prom) = stack(Behaviour::default()).await;
    until_scraped(&prom).await;
    // No series has code 503: Prometheus returns nothing for the errors, which is zero
    // errors out of the requests it does have, not missing data.
    let s = source(&prom, error_rate(r#"code="503""#));
    let r = s.sample().await;
    let (errors, requests) = rate_of(&r).unwrap_or_else(|| panic!("expected a rate, got {r:?}"));
    assert_eq!(errors, 0.0);
    assert!(requests > 100.0, "{r:?}");
    // The same with an error series that exists and stays at zero.
    let r = source(&prom, error_rate(r#"code=~"5..""#)).sample().await;
    assert!(
        rate_of(&r).is_some_and(|(e, n)| e == 0.0 && n > 100.0),
        "{r:?}"
    );
}

#[tokio::test]
async fn error_rate_without_requests_in_the_window_is_no_data() {
    let (w, prom) = stack(Behaviour::default()).await;
    let s = source(&prom, error_rate(r#"code=~"5..""#));
    reading_until(&s, 30, "a rate", |r| {
        rate_of(r).is_some_and(|(_, n)| n > 0.0)
    })
    .await;
    w.set(Behaviour {
        rps: 0.0,
        ..Behaviour::default()
    });
    // The counters stay, unchanged: zero requests in the 5s window is no data, not 0%.
    reading_until(&s, 20, "no data", |r| *r == ReadingState::NoData).await;
}

#[tokio::test]
async fn latency_quantile_tracks_the_workload_latency() {
    let (w, prom) = stack(Behaviour {
        latency: 0.02,
        ..Behaviour::default()
    })
    .await;
    let s = source(&prom, p95());
    // Every request falls in the (0.01, 0.025] bucket: Prometheus interpolates
    // 0.01 + 0.95 * 0.015 = 0.02425.
    reading_until(&s, 30, "a p95 near 0.024", |r| {
        number_of(r).is_some_and(|v| (0.0235..=0.025).contains(&v))
    })
    .await;
    w.set(Behaviour {
        latency: 0.4,
        ..Behaviour::default()
    });
    reading_until(&s, 20, "a p95 between 0.3 and 0.5", |r| {
        number_of(r).is_some_and(|v| (0.3..=0.5).contains(&v))
    })
    .await;
    // No traffic: the quantile of nothing is NaN, which is no data.
    w.set(Behaviour {
        rps: 0.0,
        ..Behaviour::default()
    });
    reading_until(&s, 20, "no data", |r| *r == ReadingState::NoData).await;
}

// ---------------------------------------------------------------------------------------
// Mapping answers of the real server to reading states

#[tokio::test]
async fn a_query_returning_several_series_is_a_configuration_error_with_stable_text() {
    let (_w, prom) = stack(Behaviour::default()).await;
    until_scraped(&prom).await;
    let s = source(&prom, expr("http_requests_total"));
    let first = s.sample().await;
    assert_eq!(
        source_error(&first),
        "query returned 2 series, expected one: aggregate with sum() or narrow the selector"
    );
    assert_eq!(s.sample().await, first, "the same text every time");
    let r = source(&prom, expr("sum(http_requests_total)"))
        .sample()
        .await;
    assert!(number_of(&r).is_some_and(|v| v > 0.0), "{r:?}");
}

#[tokio::test]
async fn empty_results_and_nan_are_no_data_while_scalars_and_infinity_are_values() {
    let (_w, prom) = stack(Behaviour::default()).await;
    until_scraped(&prom).await;
    for (query, want) in [
        (r#"http_requests_total{code="418"}"#, ReadingState::NoData),
        ("0/0", ReadingState::NoData),
        (
            "sum(rate(http_requests_total{code=\"418\"}[5s]))",
            ReadingState::NoData,
        ),
        (
            "scalar(vector(3))",
            ReadingState::Value(Measure::Number(3.0)),
        ),
        ("1 + 1", ReadingState::Value(Measure::Number(2.0))),
        ("vector(0.5)", ReadingState::Value(Measure::Number(0.5))),
        ("1/0", ReadingState::Value(Measure::Number(f64::INFINITY))),
        (
            "-1/0",
            ReadingState::Value(Measure::Number(f64::NEG_INFINITY)),
        ),
    ] {
        assert_eq!(source(&prom, expr(query)).sample().await, want, "{query}");
    }
}

#[tokio::test]
async fn queries_prometheus_cannot_run_are_source_errors_with_its_reason() {
    let (_w, prom) = stack(Behaviour::default()).await;
    until_scraped(&prom).await;
    let r = source(&prom, expr("sum(rate(http_requests_total[5s])"))
        .sample()
        .await;
    let e = source_error(&r);
    assert!(
        e.starts_with("prometheus rejected the query (bad_data): "),
        "{e}"
    );
    assert!(e.contains("parse error"), "{e}");
    let r = source(&prom, expr("http_requests_total[5s]"))
        .sample()
        .await;
    assert!(
        source_error(&r).starts_with("query returned a range vector"),
        "{r:?}"
    );
    let r = source(&prom, expr(r#""a string""#)).sample().await;
    assert_eq!(
        source_error(&r),
        "query returned a string, expected one number"
    );
}

#[tokio::test]
async fn a_killed_prometheus_is_a_source_error_not_no_data() {
    let (_w, mut prom) = stack(Behaviour::default()).await;
    let s = source(&prom, error_rate(r#"code=~"5..""#));
    reading_until(&s, 30, "a rate", |r| rate_of(r).is_some()).await;
    prom.kill().await;
    let started = Instant::now();
    let r = s.sample().await;
    let e = source_error(&r);
    assert!(
        e.starts_with("prometheus query failed: connection failed"),
        "{e}"
    );
    assert!(e.contains("refused"), "{e}");
    assert!(!e.contains("127.0.0.1"), "no url in the detail: {e}");
    assert!(
        started.elapsed() < TIMEOUT,
        "refused at once, not timed out"
    );
}

// ---------------------------------------------------------------------------------------
// Answers only a misbehaving server or proxy gives

#[tokio::test]
async fn a_hanging_prometheus_is_a_source_error_within_the_timeout() {
    let hang = support::raw_server(Misbehave::Hang).await;
    let timeout = Duration::from_millis(500);
    let s = PrometheusSource::new(
        &spec(&hang.url("/"), p95(), Duration::from_secs(5)),
        timeout,
    );
    let started = Instant::now();
    let r = s.sample().await;
    let took = started.elapsed();
    assert_eq!(source_error(&r), "no answer from prometheus within 500ms");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(400),
        "took {took:?}"
    );
}

#[tokio::test]
async fn error_pages_and_garbage_are_source_errors_that_say_what_came_back() {
    let app = Router::new()
        .route(
            "/down/api/v1/query",
            get(|| async {
                (
                    StatusCode::BAD_GATEWAY,
                    "<html><body>502 Bad Gateway</body></html>",
                )
            }),
        )
        .route(
            "/junk/api/v1/query",
            get(|| async { "hello, not prometheus" }),
        )
        .route(
            "/huge/api/v1/query",
            get(|| async { vec![b' '; rearguard::source::prometheus::BODY_LIMIT + 1] }),
        );
    let fake = support::serve(app).await;
    let sample = |path: &str| {
        let s = PrometheusSource::new(
            &spec(&fake.url(path), p95(), Duration::from_secs(5)),
            TIMEOUT,
        );
        async move { s.sample().await }
    };
    let r = sample("/down").await;
    assert_eq!(
        source_error(&r),
        "prometheus answered 502 bad gateway: <html><body>502 Bad Gateway</body></html>"
    );
    let r = sample("/junk").await;
    let e = source_error(&r);
    assert!(
        e.starts_with("the answer is not a prometheus query result ("),
        "{e}"
    );
    assert!(e.ends_with("): hello, not prometheus"), "{e}");
    let r = sample("/huge").await;
    assert!(
        source_error(&r).starts_with("the answer is larger than 4 MiB"),
        "{r:?}"
    );
    let garbage = support::raw_server(Misbehave::Garbage(b"SSH-2.0-OpenSSH_9.2\r\n")).await;
    let s = PrometheusSource::new(
        &spec(&garbage.url("/"), p95(), Duration::from_secs(5)),
        TIMEOUT,
    );
    let r = s.sample().await;
    assert!(
        source_error(&r).starts_with("prometheus query failed: "),
        "{r:?}"
    );
}

/// What the fake Prometheus saw of each request.
#[derive(Default)]
struct Seen {
    authorization: Mutex<Vec<String>>,
    params: Mutex<Vec<std::collections::HashMap<String, String>>>,
}

async fn fake_query(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.authorization.lock().unwrap().push(auth);
    seen.params.lock().unwrap().push(params);
    (
        StatusCode::UNAUTHORIZED,
        [("content-type", "application/json")],
        r#"{"status":"error","errorType":"bad_data","error":"authentication required"}"#,
    )
}

#[tokio::test]
async fn credentials_go_in_the_authorization_header_and_never_into_details() {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/prom/api/v1/query", get(fake_query))
        .with_state(Arc::clone(&seen));
    let fake = support::serve(app).await;
    let with_auth = |auth: HttpAuth| {
        let mut s = spec(&fake.url("/prom/"), expr("up"), Duration::from_secs(5));
        s.auth = Some(auth);
        PrometheusSource::new(&s, Duration::from_millis(1500))
    };
    let bearer = with_auth(HttpAuth::Bearer(SecretString::from("t0ken-s3cret")));
    let basic = with_auth(HttpAuth::Basic {
        username: "alice".to_owned(),
        password: SecretString::from("open sesame"),
    });
    for s in [&bearer, &basic] {
        let r = s.sample().await;
        let e = source_error(&r);
        assert_eq!(
            e,
            "prometheus rejected the query (bad_data): authentication required"
        );
        let shown = format!("{s:?} {r:?}");
        assert!(
            !shown.contains("t0ken") && !shown.contains("sesame"),
            "{shown}"
        );
    }
    assert_eq!(
        *seen.authorization.lock().unwrap(),
        ["Bearer t0ken-s3cret", "Basic YWxpY2U6b3BlbiBzZXNhbWU="],
        "the base path is kept and the credentials are sent"
    );
    // The query and Prometheus's own evaluation timeout (90% of ours) are sent.
    let params = seen.params.lock().unwrap().clone();
    assert_eq!(params[0].get("query").map(String::as_str), Some("up"));
    assert_eq!(params[0].get("timeout").map(String::as_str), Some("1350ms"));

    // A password in the URL is never shown either, even when the server is gone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let gone = format!("http://bob:hunter2@127.0.0.1:{port}");
    let s = PrometheusSource::new(&spec(&gone, expr("up"), Duration::from_secs(5)), TIMEOUT);
    let r = s.sample().await;
    let shown = format!("{s:?} {r:?}");
    assert!(matches!(r, ReadingState::SourceError(_)), "{r:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("bob"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_source_error_on_every_sample() {
    let dir = support::temp_dir();
    let mut s = spec("https://127.0.0.1:1", expr("up"), Duration::from_secs(5));
    s.tls.ca_file = Some(dir.path().join("missing.pem"));
    let source = PrometheusSource::new(&s, TIMEOUT);
    for _ in 0..2 {
        let r = source.sample().await;
        let e = source_error(&r);
        assert!(e.starts_with("cannot read ca_file "), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
    }
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    s.tls.ca_file = Some(dir.path().join("junk.pem"));
    let r = PrometheusSource::new(&s, TIMEOUT).sample().await;
    assert!(source_error(&r).contains("junk.pem"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// End to end through the daemon: a release symlink, a release-switch plan, the error
// rate from the real Prometheus, `> 5% for 5s` with at least 20 requests.

/// Releases v1 and v2 with `current` naming v1, and a task that makes the workload
/// behave as the release `current` names does: what a deploy and a rollback change.
struct Site {
    releases: Releases,
    workload: Arc<Workload>,
    follower: tokio::task::JoinHandle<()>,
    prom: Server,
    bad_seen: Arc<AtomicBool>,
}

impl Site {
    async fn new(v1: Behaviour, v2: Behaviour) -> Site {
        let releases = Releases::new();
        let workload = Arc::new(Workload::start(v1).await);
        let prom = promstack::prometheus(&[workload.target()], "1s", None, None).await;
        let bad_seen = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&bad_seen);
        let follower = workload.follow(releases.path().join("current"), move |release| {
            if release == "v2" {
                seen.store(true, Ordering::SeqCst);
                v2
            } else {
                v1
            }
        });
        Site {
            releases,
            workload,
            follower,
            prom,
            bad_seen,
        }
    }

    fn config(&self) -> Config {
        support::config(&format!(
            r#"
[daemon]
state_dir = "{dir}/state"
tick = "50ms"
drain_timeout = "5s"

[[target]]
name = "shop"
plan = "back"
blame_window = "5m"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "100ms" }}

[[signal]]
name = "errors"
target = "shop"
type = "prometheus"
url = "{prom}"
interval = "500ms"
timeout = "2s"
blind_after = "3s"
window = "5s"
error_rate = {{ requests = 'http_requests_total{{job="workload"}}', errors = 'code=~"5.."' }}

[[rule]]
name = "error-spike"
signal = "errors"
when = "> 5%"
for = "5s"
min_requests = 20

[[plan]]
name = "back"

[[plan.step]]
name = "switch back"
type = "release_switch"
current = "{dir}/current"
releases = "{dir}/releases"
timeout = "5s"

[plan.verify]
window = "10s"
"#,
            dir = self.releases.path().display(),
            prom = self.prom.url(),
        ))
    }

    /// The daemon's own signal, sampled by the test, to see what the daemon sees.
    fn probe(&self) -> PrometheusSource {
        source(&self.prom, error_rate(r#"code=~"5..""#))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn is_step(e: &Event) -> bool {
    matches!(e, Event::Effect(_, Effect::RunStep(_)))
}

/// Anything an incident does: its timeline, notifications, steps, closing.
fn is_incident_activity(e: &Event) -> bool {
    matches!(
        e,
        Event::Effect(
            _,
            Effect::Timeline { .. }
                | Effect::Notify(_)
                | Effect::RunStep(_)
                | Effect::IncidentClosed(_)
        )
    )
}

const HEALTHY: Behaviour = Behaviour {
    rps: 100.0,
    error_fraction: 0.0,
    latency: 0.02,
};

/// Waits until the daemon's signal reads `want`'s rates from Prometheus and the daemon has
/// observed the target's first revision, so that a deploy is a change from a known,
/// healthy revision.
async fn until_watching(site: &Site, d: &mut Running, want: impl Fn(f64, f64) -> bool) {
    d.wait_for("the daemon to start", 10, |e| matches!(e, Event::Started))
        .await;
    reading_until(&site.probe(), 30, "the expected rate", |r| {
        rate_of(r).is_some_and(|(e, n)| want(e, n))
    })
    .await;
}

#[tokio::test]
async fn a_deploy_that_raises_the_error_rate_is_rolled_back_and_verified() {
    let site = Site::new(
        HEALTHY,
        Behaviour {
            error_fraction: 0.3,
            ..HEALTHY
        },
    )
    .await;
    let mut d = start(site.config());
    until_watching(&site, &mut d, |e, n| e == 0.0 && n >= 100.0).await;
    site.releases.deploy("v2");
    let inc = d.closed_incident(40).await;
    assert!(site.bad_seen.load(Ordering::SeqCst), "v2 ran");
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("v2"));
    assert_eq!(inc.to_revision.as_deref(), Some("v1"));
    assert_eq!(site.releases.current(), "releases/v1");
    let fired = inc.timeline.iter().any(|e| e.text.contains("error-spike"));
    assert!(
        fired,
        "the rule is named in the timeline: {:#?}",
        inc.timeline
    );
    let seen = d.stop().await;
    assert_eq!(
        seen.iter().filter(|e| is_step(e)).count(),
        1,
        "one step, run once"
    );
}

#[tokio::test]
async fn a_healthy_deploy_is_left_alone() {
    let site = Site::new(HEALTHY, HEALTHY).await;
    let mut d = start(site.config());
    until_watching(&site, &mut d, |e, n| e == 0.0 && n >= 100.0).await;
    site.releases.deploy("v2");
    d.expect_none("incident", 12, is_incident_activity).await;
    assert_eq!(site.releases.current(), "releases/v2");
    // The daemon was reading values all along, not blind or without data.
    let r = site.probe().sample().await;
    assert!(
        rate_of(&r).is_some_and(|(e, n)| e == 0.0 && n >= 100.0),
        "{r:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn too_little_traffic_is_never_rolled_back_even_when_every_request_fails() {
    let quiet = Behaviour {
        rps: 1.0,
        ..HEALTHY
    };
    let site = Site::new(
        quiet,
        Behaviour {
            error_fraction: 1.0,
            ..quiet
        },
    )
    .await;
    let mut d = start(site.config());
    until_watching(&site, &mut d, |e, n| e == 0.0 && n > 0.0 && n < 20.0).await;
    site.releases.deploy("v2");
    // Every request in the window fails, yet there are fewer than 20 of them.
    reading_until(&site.probe(), 15, "a 100% error rate", |r| {
        rate_of(r).is_some_and(|(e, n)| n > 0.0 && n < 20.0 && (e - n).abs() < 1e-9)
    })
    .await;
    d.expect_none("rollback step", 8, is_step).await;
    assert_eq!(site.releases.current(), "releases/v2");
    assert!(
        site.workload.totals().1 > 0,
        "the workload did serve errors"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_prometheus_outage_makes_the_watchdog_blind_and_never_rolls_back() {
    let mut site = Site::new(
        HEALTHY,
        Behaviour {
            error_fraction: 0.3,
            ..HEALTHY
        },
    )
    .await;
    let mut d = start(site.config());
    until_watching(&site, &mut d, |e, n| e == 0.0 && n >= 100.0).await;
    site.prom.kill().await;
    // A bad deploy nobody can see: it must not be acted on blindly.
    site.releases.deploy("v2");
    let blind = d
        .wait_for("a watchdog-is-blind timeline entry", 15, |e| {
            matches!(e, Event::Effect(_, Effect::Timeline { entry, .. })
                if entry.text.contains("watchdog is blind"))
        })
        .await;
    let Event::Effect(_, Effect::Timeline { entry, .. }) = blind else {
        unreachable!()
    };
    assert!(entry.text.contains("signal errors"), "{}", entry.text);
    assert!(entry.text.contains("connection failed"), "{}", entry.text);
    d.expect_none("rollback step", 4, is_step).await;
    let seen = d.stop().await;
    assert!(!seen.iter().any(is_step), "no step ran");
    assert_eq!(site.releases.current(), "releases/v2");
}
