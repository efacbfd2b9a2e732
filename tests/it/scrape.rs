//! The scrape source against real HTTP endpoints: the test workload's `/metrics`, small
//! axum endpoints whose counters the test sets exactly, servers that answer wrong or not
//! at all; and the daemon end to end, rolling back through a `type = "scrape"` signal.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use rearguard::config::selector::{parse_matchers, parse_selector};
use rearguard::config::{
    Config, Format, HttpAuth, ScrapeQuery, ScrapeSpec, Signal, SourceSpec, TlsSpec,
};
use rearguard::daemon::Event;
use rearguard::engine::{Effect, Incident, Measure, Outcome, ReadingState};
use rearguard::source::Source;
use secrecy::SecretString;

use crate::releases::Releases;
use crate::running::{Running, start};
use crate::support::{self, Misbehave};
use crate::workload::{Behaviour, Workload};

fn spec(url: &str, query: ScrapeQuery, window: Duration) -> ScrapeSpec {
    ScrapeSpec {
        url: url.parse().expect("a valid test url"),
        query,
        window,
        auth: None,
        tls: TlsSpec::default(),
    }
}

fn source(spec: ScrapeSpec, timeout: Duration) -> Source {
    let signal = Signal {
        name: "scrape".to_owned(),
        target: 0,
        interval: Duration::from_millis(100),
        timeout,
        blind_after: Duration::from_secs(60),
        source: SourceSpec::Scrape(spec),
    };
    Source::new(&signal, &rearguard::http::client()).expect("scrape sources are supported")
}

fn error_rate() -> ScrapeQuery {
    ScrapeQuery::ErrorRate {
        requests: parse_selector("http_requests_total").unwrap(),
        errors: parse_matchers(r#"code=~"5..""#).unwrap(),
    }
}

fn latency(histogram: &str, quantile: f64) -> ScrapeQuery {
    ScrapeQuery::Latency {
        histogram: parse_selector(histogram).unwrap(),
        quantile,
    }
}

fn source_error(state: ReadingState) -> String {
    match state {
        ReadingState::SourceError(reason) => reason,
        other => panic!("expected a source error, got {other:?}"),
    }
}

/// Samples every 100 ms (the source's interval) until `done` accepts a reading, and
/// returns it; fails at the deadline with the last reading.
async fn sample_until(
    source: &Source,
    secs: u64,
    done: impl Fn(&ReadingState) -> bool,
) -> ReadingState {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let state = source.sample().await;
        if done(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "no acceptable reading within {secs}s; last: {state:?}"
        );
    }
}

#[tokio::test]
async fn error_rate_converges_to_the_workload_error_fraction_over_the_window() {
    let w = Workload::start(Behaviour {
        rps: 200.0,
        error_fraction: 0.2,
        latency: 0.02,
    })
    .await;
    let s = source(
        spec(&w.metrics_url(), error_rate(), Duration::from_secs(1)),
        Duration::from_secs(2),
    );
    assert_eq!(
        s.sample().await,
        ReadingState::Insufficient { have: 1, need: 2 },
        "one scrape is not a window"
    );
    // Once a whole window has been scraped: 200 requests a second, 20% of them errors.
    let state = sample_until(&s, 10, |state| {
        matches!(state, ReadingState::Value(Measure::Rate { requests, .. }) if *requests > 150.0)
    })
    .await;
    let ReadingState::Value(Measure::Rate { errors, requests }) = state else {
        unreachable!()
    };
    assert!(
        (160.0..=240.0).contains(&requests),
        "requests {requests} should be about rps x window = 200"
    );
    let rate = errors / requests;
    assert!(
        (0.15..=0.25).contains(&rate),
        "error rate {rate} ({errors}/{requests})"
    );
}

#[tokio::test]
async fn latency_p95_lies_in_the_bucket_of_the_workload_latency_and_follows_the_window() {
    let w = Workload::start(Behaviour {
        rps: 200.0,
        error_fraction: 0.0,
        latency: 0.07,
    })
    .await;
    let s = source(
        spec(
            &w.metrics_url(),
            latency("http_request_duration_seconds_bucket", 0.95),
            Duration::from_millis(600),
        ),
        Duration::from_secs(2),
    );
    // Every observation is in (0.05, 0.1]: p95 = 0.05 + 0.05 * 0.95.
    let state = sample_until(&s, 10, |s| matches!(s, ReadingState::Value(_))).await;
    let ReadingState::Value(Measure::Number(p95)) = state else {
        panic!("expected a number, got {state:?}")
    };
    assert!((p95 - 0.0975).abs() < 1e-9, "p95 {p95}");
    // Slower requests move p95 to (0.1, 0.2] once the window holds only them.
    w.set(Behaviour {
        rps: 200.0,
        error_fraction: 0.0,
        latency: 0.15,
    });
    sample_until(
        &s,
        10,
        |s| matches!(s, ReadingState::Value(Measure::Number(v)) if (v - 0.195).abs() < 1e-9),
    )
    .await;
}

/// An endpoint serving exactly the text the test sets, with a content type.
struct Exposed {
    text: Mutex<(String, &'static str)>,
    accept: Mutex<Option<String>>,
}

async fn exposed(
    State(e): State<Arc<Exposed>>,
    headers: HeaderMap,
) -> impl axum::response::IntoResponse {
    *e.accept.lock().unwrap() = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (text, content_type) = e.text.lock().unwrap().clone();
    ([(header::CONTENT_TYPE, content_type)], text)
}

async fn exposing() -> (Arc<Exposed>, support::TestServer) {
    let e = Arc::new(Exposed {
        text: Mutex::new((String::new(), "text/plain; version=0.0.4")),
        accept: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(exposed))
        .with_state(Arc::clone(&e));
    (e, support::serve(app).await)
}

impl Exposed {
    fn set(&self, text: &str, content_type: &'static str) {
        *self.text.lock().unwrap() = (text.to_owned(), content_type);
    }

    fn counters(&self, ok: u64, errors: u64) {
        self.set(
            &format!(
                "# TYPE http_requests_total counter\nhttp_requests_total{{code=\"200\"}} {ok}\nhttp_requests_total{{code=\"500\"}} {errors}\n"
            ),
            "text/plain; version=0.0.4",
        );
    }
}

#[tokio::test]
async fn a_counter_reset_counts_like_prometheus_increase() {
    let (e, server) = exposing().await;
    let s = source(
        spec(
            &server.url("/metrics"),
            error_rate(),
            Duration::from_secs(60),
        ),
        Duration::from_secs(2),
    );
    // Requests 100, then 150, then the process restarts and shows 20: 50 + 20 = 70.
    // Errors 0, then 10, then 5 after the restart: 10 + 5 = 15.
    e.counters(100, 0);
    s.sample().await;
    e.counters(140, 10);
    assert_eq!(
        s.sample().await,
        ReadingState::Value(Measure::Rate {
            errors: 10.0,
            requests: 50.0
        })
    );
    e.counters(15, 5);
    assert_eq!(
        s.sample().await,
        ReadingState::Value(Measure::Rate {
            errors: 15.0,
            requests: 70.0
        })
    );
}

#[tokio::test]
async fn histogram_quantiles_of_bucket_increases_match_hand_computed_values() {
    let (e, server) = exposing().await;
    let url = server.url("/metrics");
    let window = Duration::from_secs(60);
    let timeout = Duration::from_secs(2);
    let p50 = source(spec(&url, latency("lat_bucket", 0.5), window), timeout);
    let p95 = source(spec(&url, latency("lat_bucket", 0.95), window), timeout);
    let hist = |b: [u64; 4]| {
        format!(
            "# TYPE lat histogram\nlat_bucket{{le=\"0.1\"}} {}\nlat_bucket{{le=\"0.2\"}} {}\nlat_bucket{{le=\"0.5\"}} {}\nlat_bucket{{le=\"+Inf\"}} {}\nlat_sum 1\nlat_count {}\n",
            b[0], b[1], b[2], b[3], b[3]
        )
    };
    e.set(&hist([10, 20, 30, 30]), "text/plain");
    p50.sample().await;
    p95.sample().await;
    // Increases: 0 up to 0.1, 40 up to 0.2, 80 up to 0.5, 100 in all.
    e.set(&hist([10, 60, 110, 130]), "text/plain");
    // Rank 50 falls in (0.2, 0.5]: 10 of its 40, so 0.2 + 0.3 * 10 / 40.
    assert_eq!(
        p50.sample().await,
        ReadingState::Value(Measure::Number(0.275))
    );
    // Rank 95 falls in the +Inf bucket: the last finite bound.
    assert_eq!(
        p95.sample().await,
        ReadingState::Value(Measure::Number(0.5))
    );
    // No observation in the window is no data.
    let idle = source(spec(&url, latency("lat_bucket", 0.5), window), timeout);
    idle.sample().await;
    assert_eq!(idle.sample().await, ReadingState::NoData);
}

#[tokio::test]
async fn malformed_or_failed_answers_are_source_errors_with_the_reason() {
    let (e, server) = exposing().await;
    let url = server.url("/metrics");
    let s = source(
        spec(&url, error_rate(), Duration::from_secs(60)),
        Duration::from_secs(2),
    );
    let cases: &[(&str, &'static str, &str)] = &[
        (
            "this is not an exposition\n",
            "text/plain",
            "line 1: the value of this is not a number",
        ),
        (
            "http_requests_total{code=\"200\"} 10\nhttp_requests_total{code=\"500\"} 1",
            "text/plain",
            "line 2: the last line has no line feed",
        ),
        (
            "http_requests_total{code=\"200\"} 10\nhttp_requests_total{co",
            "text/plain",
            "cut short",
        ),
        (
            "<!DOCTYPE html>\n<html><body><h1>Bad Gateway</h1></body></html>\n",
            "text/html; charset=utf-8",
            "(content type text/html; charset=utf-8): line 1: expected a metric name",
        ),
        (
            "http_requests_total 1\n",
            "application/openmetrics-text; version=1.0.0",
            "no # EOF",
        ),
    ];
    for (text, content_type, want) in cases {
        e.set(text, content_type);
        let reason = source_error(s.sample().await);
        assert!(reason.contains(want), "{text:?}: {reason}");
    }

    let failing = support::serve(Router::new().route(
        "/metrics",
        get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "http_requests_total 1\n") }),
    ))
    .await;
    let s = source(
        spec(
            &failing.url("/metrics"),
            error_rate(),
            Duration::from_secs(60),
        ),
        Duration::from_secs(2),
    );
    assert_eq!(source_error(s.sample().await), "status 500");
}

#[tokio::test]
async fn an_endpoint_that_hangs_is_a_source_error_at_the_timeout() {
    let server = support::raw_server(Misbehave::Hang).await;
    let s = source(
        spec(
            &server.url("/metrics"),
            error_rate(),
            Duration::from_secs(60),
        ),
        Duration::from_millis(300),
    );
    let started = Instant::now();
    let reason = source_error(s.sample().await);
    assert!(reason.contains("no answer within 300ms"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        drop(listener);
        url
    };
    let s = source(
        spec(&refused, error_rate(), Duration::from_secs(60)),
        Duration::from_secs(2),
    );
    let reason = source_error(s.sample().await);
    assert!(reason.starts_with("connection failed"), "{reason}");
}

#[tokio::test]
async fn openmetrics_with_eof_parses_and_the_request_asks_for_it() {
    let (e, server) = exposing().await;
    e.set(
        "# TYPE queue_jobs gauge\n# UNIT queue_jobs jobs\nqueue_jobs{shard=\"a\"} 3\nqueue_jobs{shard=\"b\"} 4.5\n# TYPE done counter\ndone_total 7 # {trace_id=\"x\"} 1 1700000000.1\ndone_created 1700000000\n# EOF\n",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    );
    let s = source(
        spec(
            &server.url("/metrics"),
            ScrapeQuery::Value(parse_selector("queue_jobs").unwrap()),
            Duration::from_secs(60),
        ),
        Duration::from_secs(2),
    );
    assert_eq!(s.sample().await, ReadingState::Value(Measure::Number(7.5)));
    let accept = e.accept.lock().unwrap().clone().unwrap_or_default();
    assert!(
        accept.starts_with("application/openmetrics-text"),
        "{accept}"
    );
    assert!(accept.contains("text/plain;version=0.0.4"), "{accept}");

    // A selector that matches nothing is no data, not an error.
    let absent = source(
        spec(
            &server.url("/metrics"),
            ScrapeQuery::Value(parse_selector(r#"queue_jobs{shard="z"}"#).unwrap()),
            Duration::from_secs(60),
        ),
        Duration::from_secs(2),
    );
    assert_eq!(absent.sample().await, ReadingState::NoData);
}

#[tokio::test]
async fn credentials_are_sent_and_never_shown_in_readings() {
    async fn guarded(headers: HeaderMap) -> (StatusCode, &'static str) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // "scraper:hunter2" in base64.
        if matches!(
            auth,
            Some("Bearer s3cret-token") | Some("Basic c2NyYXBlcjpodW50ZXIy")
        ) {
            (StatusCode::OK, "up 1\n")
        } else {
            (StatusCode::UNAUTHORIZED, "no\n")
        }
    }
    let server = support::serve(Router::new().route("/metrics", get(guarded))).await;
    let with = |auth: HttpAuth| {
        let mut spec = spec(
            &server.url("/metrics"),
            ScrapeQuery::Value(parse_selector("up").unwrap()),
            Duration::from_secs(60),
        );
        spec.auth = Some(auth);
        source(spec, Duration::from_secs(2))
    };
    let bearer = with(HttpAuth::Bearer(SecretString::from("s3cret-token")));
    assert_eq!(
        bearer.sample().await,
        ReadingState::Value(Measure::Number(1.0))
    );
    let basic = with(HttpAuth::Basic {
        username: "scraper".to_owned(),
        password: SecretString::from("hunter2"),
    });
    assert_eq!(
        basic.sample().await,
        ReadingState::Value(Measure::Number(1.0))
    );
    let wrong = with(HttpAuth::Bearer(SecretString::from("wrong-token")));
    let reason = source_error(wrong.sample().await);
    assert_eq!(reason, "status 401");
    assert!(!format!("{wrong:?}").contains("wrong-token"), "{wrong:?}");
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_source_error_on_every_sample() {
    let mut spec = spec(
        "https://127.0.0.1:9/metrics",
        error_rate(),
        Duration::from_secs(60),
    );
    spec.tls.ca_file = Some("/nonexistent/ca.pem".into());
    let s = source(spec, Duration::from_secs(1));
    for _ in 0..2 {
        let reason = source_error(s.sample().await);
        assert!(
            reason.contains("cannot read ca_file /nonexistent/ca.pem"),
            "{reason}"
        );
    }
}

// The daemon end to end. The helpers are those of `daemon.rs`, kept small here.

/// Releases v1 and v2 behind a `current` symlink, and a workload that behaves as the
/// release `current` names: v2 serves 30% errors.
struct Fixture {
    releases: Releases,
    workload: Arc<Workload>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Fixture {
    async fn new(rps: f64, v2_error_fraction: f64) -> Fixture {
        let releases = Releases::new();
        let behaviour = move |error_fraction| Behaviour {
            rps,
            error_fraction,
            latency: 0.02,
        };
        let workload = Arc::new(Workload::start(behaviour(0.0)).await);
        let follower = workload.follow(releases.path().join("current"), move |release| {
            behaviour(if release == "v2" {
                v2_error_fraction
            } else {
                0.0
            })
        });
        Fixture {
            releases,
            workload,
            follower,
        }
    }

    fn config(&self) -> Config {
        let text = format!(
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
type = "scrape"
url = "{url}"
interval = "500ms"
timeout = "1s"
window = "3s"
error_rate = {{ requests = "http_requests_total", errors = 'code=~"5.."' }}

[[rule]]
name = "error rate"
signal = "errors"
when = "> 5%"
for = "2s"
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
window = "5s"
"#,
            dir = self.releases.path().display(),
            url = self.workload.metrics_url(),
        );
        rearguard::config::load_str(&text, Format::Toml, std::iter::empty(), Path::new("."))
            .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}"))
    }

    /// Waits until the daemon has scraped the workload `n` more times.
    async fn scrapes(&self, d: &mut Running, n: usize) {
        let target = self.workload.server.request_count() + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(n as u64 + 10);
        while self.workload.server.request_count() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the daemon stopped scraping; saw {:#?}",
                d.seen
            );
            // Events are collected while waiting, so none is missed.
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(20), d.rx.recv()).await
            {
                d.seen.push(e);
            }
        }
    }
}

/// Starts the daemon on the fixture, lets it scrape v1 healthy, then deploys v2.
async fn deploy_v2_under_watch(f: &Fixture) -> Running {
    let mut d = start(f.config());
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    // Two scrapes: the window holds healthy v1 traffic before the change.
    f.scrapes(&mut d, 2).await;
    f.releases.deploy("v2");
    d
}

#[tokio::test]
async fn daemon_rolls_back_through_a_scrape_signal_when_a_deploy_turns_bad() {
    let f = Fixture::new(100.0, 0.3).await;
    let mut d = deploy_v2_under_watch(&f).await;
    let closed = d
        .wait_for("a closed incident", 30, |e| {
            matches!(e, Event::Effect(_, Effect::IncidentClosed(_)))
        })
        .await;
    let Event::Effect(_, Effect::IncidentClosed(inc)) = closed else {
        unreachable!()
    };
    let inc: Incident = *inc;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("v2"));
    assert_eq!(inc.to_revision.as_deref(), Some("v1"));
    assert_eq!(f.releases.current(), "releases/v1");
    d.stop().await;
}

/// Lets the daemon scrape v2 for `for` plus a window and more, then checks that no rule
/// left ok and nothing ran.
async fn assert_no_rollback(f: &Fixture, mut d: Running) {
    // 14 scrapes at 500 ms: 7 s, more than the window (3 s) plus `for` (2 s).
    f.scrapes(&mut d, 14).await;
    let seen = d.stop().await;
    let acted: Vec<&Event> = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Effect(_, Effect::RuleChanged { .. } | Effect::RunStep(_))
            )
        })
        .collect();
    assert!(acted.is_empty(), "{acted:#?}");
    assert_eq!(f.releases.current(), "releases/v2");
}

#[tokio::test]
async fn daemon_does_not_roll_back_through_a_scrape_signal_when_the_deploy_stays_healthy() {
    let f = Fixture::new(100.0, 0.0).await;
    let d = deploy_v2_under_watch(&f).await;
    assert_no_rollback(&f, d).await;
}

#[tokio::test]
async fn daemon_does_not_roll_back_through_a_scrape_signal_when_traffic_is_too_low() {
    // 5 requests a second is 15 in the 3 s window, under min_requests = 20, even though
    // 30% of them fail.
    let f = Fixture::new(5.0, 0.3).await;
    let d = deploy_v2_under_watch(&f).await;
    assert_no_rollback(&f, d).await;
}
