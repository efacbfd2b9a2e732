//! Sources against real endpoints and real processes: HTTP probes against a local axum
//! service and raw TCP servers that misbehave, exec checks and the process runner with
//! real children (including ones that outlive their parent), and change observers on
//! real symlinks.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use rearguard::config::{ChangeSpec, ExecSpec, HttpProbeSpec, Signal, SourceSpec};
use rearguard::engine::{Measure, ReadingState};
use rearguard::process::{self, Exit};
use rearguard::source::{Source, change};

use crate::support::{self, Misbehave, argv};

fn signal(source: SourceSpec, timeout: Duration) -> Signal {
    Signal {
        name: "probe".to_owned(),
        target: 0,
        interval: Duration::from_secs(10),
        timeout,
        blind_after: Duration::from_secs(60),
        source,
    }
}

fn probe_spec(url: &str) -> HttpProbeSpec {
    HttpProbeSpec {
        url: url.parse().expect("a valid test url"),
        method: reqwest::Method::GET,
        expect_status: vec![200],
        body_contains: None,
        json: None,
    }
}

async fn probe(spec: HttpProbeSpec, timeout: Duration) -> ReadingState {
    let source = Source::new(
        &signal(SourceSpec::HttpProbe(spec), timeout),
        &rearguard::http::client(),
    )
    .expect("http probes are supported");
    source.sample().await
}

/// The check's outcome, or a panic naming the unexpected state.
fn check(state: ReadingState) -> (bool, Option<String>) {
    match state {
        ReadingState::Value(Measure::Check { ok, detail }) => (ok, detail),
        other => panic!("expected a check, got {other:?}"),
    }
}

fn failed_detail(state: ReadingState) -> String {
    match check(state) {
        (false, Some(detail)) => detail,
        other => panic!("expected a failed check with a detail, got {other:?}"),
    }
}

async fn service() -> support::TestServer {
    let app = Router::new()
        .route("/health", get(|| async { "all good" }))
        .route(
            "/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "oops") }),
        )
        .route(
            "/json",
            get(|| async { r#"{"status": "degraded", "checks": {"db": 1}}"# }),
        )
        .route("/big", get(|| async { "x".repeat(1024 * 1024 + 1) }));
    support::serve(app).await
}

#[tokio::test]
async fn probe_of_a_healthy_service_is_a_passed_check() {
    let server = service().await;
    let state = probe(probe_spec(&server.url("/health")), Duration::from_secs(2)).await;
    assert_eq!(check(state), (true, None));
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn probe_built_from_a_configuration_file_checks_the_configured_url() {
    let server = service().await;
    let cfg = support::config(&format!(
        r#"
[[target]]
name = "app"

[[signal]]
name = "health"
target = "app"
type = "http_probe"
url = "{}"
timeout = "2s"
body_contains = "good"
"#,
        server.url("/health")
    ));
    let source = Source::new(&cfg.signals[0], &rearguard::http::client()).expect("supported");
    assert_eq!(check(source.sample().await), (true, None));
}

#[tokio::test]
async fn probe_of_a_500_is_a_failed_check_naming_the_status() {
    let server = service().await;
    let detail =
        failed_detail(probe(probe_spec(&server.url("/broken")), Duration::from_secs(2)).await);
    assert_eq!(detail, "status 500, expected 200");
}

#[tokio::test]
async fn probe_that_hangs_is_a_failed_check_after_its_timeout() {
    let server = support::raw_server(Misbehave::Hang).await;
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let detail = failed_detail(probe(probe_spec(&server.url("/health")), timeout).await);
    let took = started.elapsed();
    assert_eq!(detail, "no answer within 500ms");
    assert!(took >= timeout, "answered before the timeout: {took:?}");
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn probe_of_a_reset_connection_is_a_failed_check() {
    let server = support::raw_server(Misbehave::Reset).await;
    let detail =
        failed_detail(probe(probe_spec(&server.url("/health")), Duration::from_secs(2)).await);
    assert!(detail.starts_with("connection failed: "), "{detail}");
    assert!(detail.contains("reset"), "{detail}");
    assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn probe_of_a_refused_connection_is_a_failed_check() {
    // A port that was just free: nothing listens on it any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let detail = failed_detail(
        probe(
            probe_spec(&format!("http://{addr}/health")),
            Duration::from_secs(2),
        )
        .await,
    );
    assert!(detail.starts_with("connection failed: "), "{detail}");
    assert!(detail.to_lowercase().contains("refused"), "{detail}");
}

#[tokio::test]
async fn probe_answered_with_bytes_that_are_not_http_is_a_failed_check() {
    let server = support::raw_server(Misbehave::Garbage(
        b"SSH-2.0-OpenSSH_9.6\r\nthis is not http\r\n",
    ))
    .await;
    let detail =
        failed_detail(probe(probe_spec(&server.url("/health")), Duration::from_secs(2)).await);
    assert!(detail.starts_with("request failed: "), "{detail}");
    assert!(
        detail.contains("HTTP"),
        "names the protocol error: {detail}"
    );
}

#[tokio::test]
async fn probe_detail_never_shows_the_url_credentials() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://watchdog:hunter2-secret@{addr}/health");
    let detail = failed_detail(probe(probe_spec(&url), Duration::from_secs(2)).await);
    assert!(!detail.contains("hunter2-secret"), "{detail}");
    assert!(!detail.contains("watchdog:"), "{detail}");
}

#[tokio::test]
async fn probe_json_field_with_the_expected_value_passes() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/json"));
    spec.json = Some(("/status".to_owned(), serde_json::json!("degraded")));
    assert_eq!(
        check(probe(spec.clone(), Duration::from_secs(2)).await),
        (true, None)
    );
    // Numbers compare by value, whatever their written form.
    spec.json = Some(("/checks/db".to_owned(), serde_json::json!(1.0)));
    assert_eq!(
        check(probe(spec, Duration::from_secs(2)).await),
        (true, None)
    );
}

#[tokio::test]
async fn probe_json_field_with_another_value_fails_naming_both() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/json"));
    spec.json = Some(("/status".to_owned(), serde_json::json!("healthy")));
    let detail = failed_detail(probe(spec, Duration::from_secs(2)).await);
    assert_eq!(detail, r#"/status is "degraded", expected "healthy""#);
}

#[tokio::test]
async fn probe_json_field_that_is_missing_fails() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/json"));
    spec.json = Some(("/version".to_owned(), serde_json::json!("1.2")));
    let detail = failed_detail(probe(spec, Duration::from_secs(2)).await);
    assert_eq!(detail, r#"/version is missing, expected "1.2""#);
}

#[tokio::test]
async fn probe_expecting_json_fails_on_a_body_that_is_not_json() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/health"));
    spec.json = Some(("/status".to_owned(), serde_json::json!("healthy")));
    let detail = failed_detail(probe(spec, Duration::from_secs(2)).await);
    assert!(detail.starts_with("body is not JSON: "), "{detail}");
}

#[tokio::test]
async fn probe_body_must_contain_the_expected_text() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/health"));
    spec.body_contains = Some("good".to_owned());
    assert_eq!(
        check(probe(spec.clone(), Duration::from_secs(2)).await),
        (true, None)
    );
    spec.body_contains = Some("excellent".to_owned());
    let detail = failed_detail(probe(spec, Duration::from_secs(2)).await);
    assert_eq!(detail, r#"body does not contain "excellent""#);
}

#[tokio::test]
async fn probe_body_larger_than_one_mebibyte_fails() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/big"));
    spec.body_contains = Some("x".to_owned());
    let detail = failed_detail(probe(spec, Duration::from_secs(5)).await);
    assert_eq!(detail, "body larger than 1 MiB");
}

#[tokio::test]
async fn probe_with_an_unexpected_status_list_names_all_of_them() {
    let server = service().await;
    let mut spec = probe_spec(&server.url("/broken"));
    spec.expect_status = vec![200, 204];
    let detail = failed_detail(probe(spec, Duration::from_secs(2)).await);
    assert_eq!(detail, "status 500, expected one of 200, 204");
}

fn exec_source(command: &[&str], timeout: Duration) -> Source {
    let spec = ExecSpec {
        command: argv(command),
        env: [("GREETING".to_owned(), "hello".to_owned())].into(),
        inherit_env: Vec::new(),
        cwd: None,
    };
    Source::new(
        &signal(SourceSpec::Exec(spec), timeout),
        &rearguard::http::client(),
    )
    .expect("exec is supported")
}

#[tokio::test]
async fn exec_check_that_exits_0_passes() {
    let source = exec_source(
        &["/bin/sh", "-c", "test \"$GREETING\" = hello"],
        Duration::from_secs(5),
    );
    assert_eq!(check(source.sample().await), (true, None));
}

#[tokio::test]
async fn exec_check_that_exits_nonzero_fails_with_the_code_and_last_output_lines() {
    let script =
        "for i in 1 2 3 4 5 6 7; do echo line $i; done; echo 'checkout failed' >&2; exit 3";
    let source = exec_source(&["/bin/sh", "-c", script], Duration::from_secs(5));
    let detail = failed_detail(source.sample().await);
    assert_eq!(
        detail,
        "exit 3: line 4 | line 5 | line 6 | line 7 | checkout failed"
    );
}

#[tokio::test]
async fn exec_check_that_runs_past_its_timeout_is_a_failed_check() {
    let source = exec_source(
        &["/bin/sh", "-c", "echo starting; sleep 30"],
        Duration::from_millis(300),
    );
    let started = Instant::now();
    let detail = failed_detail(source.sample().await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(detail, "timed out after 300ms: starting");
}

#[tokio::test]
async fn exec_check_whose_program_is_missing_is_a_source_error() {
    let source = exec_source(&["/nonexistent/smoke-test"], Duration::from_secs(5));
    match source.sample().await {
        ReadingState::SourceError(e) => {
            assert_eq!(e, r#"program "/nonexistent/smoke-test" not found"#)
        }
        other => panic!("expected a source error, got {other:?}"),
    }
}

#[tokio::test]
async fn exec_check_whose_program_is_not_executable_is_a_source_error() {
    let dir = support::temp_dir();
    let script = dir.path().join("smoke.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let source = exec_source(&[script.to_str().unwrap()], Duration::from_secs(5));
    match source.sample().await {
        ReadingState::SourceError(e) => assert!(e.contains("permission denied"), "{e}"),
        other => panic!("expected a source error, got {other:?}"),
    }
}

fn command(argv: &[String], timeout: Duration) -> process::Command<'_> {
    process::Command {
        argv,
        env: Vec::new(),
        inherit: &[],
        cwd: None,
        timeout,
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group_even_when_a_grandchild_holds_stdout() {
    // The shell prints the pid of a background sleep that inherits stdout, then waits.
    let args = argv(&["/bin/sh", "-c", "sleep 30 & echo \"$!\"; wait"]);
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let finished = process::run(command(&args, timeout))
        .await
        .expect("sh starts");
    let took = started.elapsed();
    assert_eq!(finished.status, Exit::TimedOut);
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(3),
        "took {took:?}"
    );
    let grandchild: u32 = finished
        .output
        .trim()
        .parse()
        .expect("the grandchild's pid");
    support::poll_until(Duration::from_secs(5), || {
        support::process_is_gone(grandchild)
    })
    .await
    .unwrap_or_else(|_| panic!("grandchild {grandchild} survived the timeout"));
}

#[tokio::test]
async fn dropping_a_running_command_kills_its_process_group() {
    let dir = support::temp_dir();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo \"$!\" > {}; wait", pidfile.display());
    let args = argv(&["/bin/sh", "-c", &script]);
    let run = process::run(command(&args, Duration::from_secs(60)));
    // The future is dropped as soon as the grandchild's pid is known.
    let file = pidfile.clone();
    let abandoned = tokio::time::timeout(Duration::from_secs(10), async move {
        tokio::select! {
            _ = run => panic!("the command ended on its own"),
            () = async {
                support::poll_until(Duration::from_secs(10), || {
                    std::fs::read_to_string(&file).is_ok_and(|s| s.ends_with('\n'))
                })
                .await
                .expect("the script writes its pid file");
            } => {}
        }
    })
    .await;
    assert!(abandoned.is_ok(), "the pid file never appeared");
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    support::poll_until(Duration::from_secs(5), || {
        support::process_is_gone(grandchild)
    })
    .await
    .unwrap_or_else(|_| panic!("grandchild {grandchild} survived the dropped future"));
}

#[tokio::test]
async fn a_command_that_exits_returns_promptly_although_a_background_process_holds_stdout() {
    let args = argv(&["/bin/sh", "-c", "sleep 5 & echo \"$!\"; echo done"]);
    let started = Instant::now();
    let finished = process::run(command(&args, Duration::from_secs(30)))
        .await
        .expect("sh starts");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(finished.status, Exit::Code(0));
    assert!(finished.output.ends_with("done\n"), "{:?}", finished.output);
    // A process left running on purpose is not ours to kill; clean up after the test.
    let pid: i32 = finished.output.lines().next().unwrap().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[tokio::test]
async fn output_interleaves_stdout_and_stderr_and_reports_exit_codes_and_signals() {
    let args = argv(&["/bin/sh", "-c", "echo out; echo err >&2; echo out2; exit 7"]);
    let finished = process::run(command(&args, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(finished.status, Exit::Code(7));
    assert_eq!(finished.output, "out\nerr\nout2\n");
    let args = argv(&["/bin/sh", "-c", "kill -TERM $$"]);
    let finished = process::run(command(&args, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(finished.status, Exit::Signal(libc::SIGTERM));
}

#[tokio::test]
async fn output_is_bounded_to_its_last_16_kib() {
    let args = argv(&[
        "/bin/sh",
        "-c",
        "head -c 100000 /dev/zero | tr '\\0' a; echo END",
    ]);
    let finished = process::run(command(&args, Duration::from_secs(10)))
        .await
        .unwrap();
    let kept = process::OUTPUT_LIMIT;
    let cut = 100_004 - kept;
    let prefix = format!("[... {cut} bytes cut]\n");
    assert!(
        finished.output.starts_with(&prefix),
        "{:?}",
        &finished.output[..40]
    );
    assert_eq!(finished.output.len(), prefix.len() + kept);
    assert!(finished.output.ends_with("aaaEND\n"));
}

#[tokio::test]
async fn output_is_cut_on_a_character_boundary() {
    let dir = support::temp_dir();
    let file = dir.path().join("accents");
    // 2 bytes each plus a newline: the last 16 KiB start in the middle of a character.
    std::fs::write(&file, format!("{}\n", "é".repeat(10_000))).unwrap();
    let args = argv(&["cat", file.to_str().unwrap()]);
    let finished = process::run(command(&args, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        !finished.output.contains('\u{FFFD}'),
        "a character was split"
    );
    let body = finished.output.split_once('\n').unwrap().1;
    assert_eq!(
        body,
        format!("{}\n", "é".repeat((process::OUTPUT_LIMIT - 2) / 2))
    );
}

#[tokio::test]
async fn a_missing_program_or_working_directory_is_a_spawn_error_naming_it() {
    let args = argv(&["no-such-program-rearguard"]);
    let err = process::run(command(&args, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"program "no-such-program-rearguard" not found"#
    );
    let args = argv(&["true"]);
    let mut cmd = command(&args, Duration::from_secs(5));
    cmd.cwd = Some(Path::new("/nonexistent/dir"));
    let err = process::run(cmd).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "working directory /nonexistent/dir does not exist"
    );
}

#[tokio::test]
async fn release_symlink_revision_is_the_name_of_the_release_it_points_at() {
    let dir = support::temp_dir();
    std::fs::create_dir_all(dir.path().join("releases/v2")).unwrap();
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("releases/v2", &current).unwrap();
    let spec = ChangeSpec::ReleaseSymlink {
        path: current.clone(),
        interval: Duration::from_secs(5),
    };
    assert_eq!(change::observe(&spec).await, Ok("v2".to_owned()));
    let absolute = dir.path().join("absolute");
    std::os::unix::fs::symlink(dir.path().join("releases/v2/"), &absolute).unwrap();
    let spec = ChangeSpec::ReleaseSymlink {
        path: absolute,
        interval: Duration::from_secs(5),
    };
    assert_eq!(change::observe(&spec).await, Ok("v2".to_owned()));
}

#[tokio::test]
async fn release_symlink_that_is_missing_or_not_a_symlink_is_an_error() {
    let dir = support::temp_dir();
    let missing = ChangeSpec::ReleaseSymlink {
        path: dir.path().join("current"),
        interval: Duration::from_secs(5),
    };
    let err = change::observe(&missing).await.unwrap_err();
    assert!(
        err.starts_with("cannot read ") && err.contains("current"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("current")).unwrap();
    let err = change::observe(&missing).await.unwrap_err();
    assert!(err.ends_with("current is not a symlink"), "{err}");
}

fn exec_change(command: &[&str]) -> ChangeSpec {
    ChangeSpec::Exec {
        command: argv(command),
        env: Default::default(),
        inherit_env: Vec::new(),
        interval: Duration::from_secs(30),
        timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn exec_change_revision_is_the_trimmed_stdout_without_stderr() {
    let spec = exec_change(&[
        "/bin/sh",
        "-c",
        "echo 'warning: stale cache' >&2; echo '  abc123  '",
    ]);
    assert_eq!(change::observe(&spec).await, Ok("abc123".to_owned()));
}

#[tokio::test]
async fn exec_change_that_fails_prints_nothing_or_hangs_is_an_error() {
    let failing = exec_change(&["/bin/sh", "-c", "echo 'no repo' >&2; exit 2"]);
    assert_eq!(
        change::observe(&failing).await,
        Err("exit 2: no repo".to_owned())
    );
    let silent = exec_change(&["true"]);
    assert_eq!(
        change::observe(&silent).await,
        Err("the command printed no revision".to_owned())
    );
    let hanging = exec_change(&["sleep", "30"]);
    assert_eq!(
        change::observe(&hanging).await,
        Err("timed out after 500ms".to_owned())
    );
}
