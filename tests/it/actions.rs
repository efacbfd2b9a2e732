//! Actions against real processes, real release directories and symlinks, and a local
//! HTTP receiver that records what it was sent.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use rearguard::action::{Action, ActionContext, ActionOutput};
use rearguard::config::{ActionSpec, ExecSpec, HeaderValue, HttpCallSpec, ReleaseSwitchSpec};
use secrecy::SecretString;

use crate::support::{self, argv};

fn ctx() -> ActionContext {
    ActionContext {
        incident: "inc-7".to_owned(),
        target: "shop".to_owned(),
        rule: "errors".to_owned(),
        from_revision: Some("v2".to_owned()),
        to_revision: Some("v1".to_owned()),
        bad_revisions: Vec::new(),
        attempt: 1,
    }
}

async fn run(spec: ActionSpec, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
    Action::new(&spec, &rearguard::http::client())
        .run(ctx, timeout)
        .await
}

fn exec(command: &[&str]) -> ActionSpec {
    ActionSpec::Exec(ExecSpec {
        command: argv(command),
        env: Default::default(),
        inherit_env: Vec::new(),
        cwd: None,
    })
}

#[tokio::test]
async fn exec_action_substitutes_whole_argument_placeholders_without_a_shell() {
    let mut c = ctx();
    c.to_revision = Some("v1; echo pwned $HOME".to_owned());
    let spec = exec(&[
        "printf",
        "%s|%s|%s",
        "{incident}",
        "{to_revision}",
        "{rule}",
    ]);
    let out = run(spec, &c, Duration::from_secs(5)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.output, "inc-7|v1; echo pwned $HOME|errors");
    assert_eq!(out.error, None);
}

#[tokio::test]
async fn exec_action_passes_the_incident_in_environment_variables() {
    let mut c = ctx();
    c.to_revision = None;
    let script = r#"echo "$REARGUARD_INCIDENT/$REARGUARD_TARGET/$REARGUARD_RULE/$REARGUARD_FROM_REVISION/${REARGUARD_TO_REVISION-unset}/$EXTRA""#;
    let spec = ActionSpec::Exec(ExecSpec {
        command: argv(&["/bin/sh", "-c", script]),
        env: [("EXTRA".to_owned(), "extra".to_owned())].into(),
        inherit_env: Vec::new(),
        cwd: None,
    });
    let out = run(spec, &c, Duration::from_secs(5)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.output, "inc-7/shop/errors/v2/unset/extra\n");
}

#[tokio::test]
async fn exec_action_from_a_configuration_file_runs_in_its_working_directory() {
    let dir = support::temp_dir();
    let cfg = support::config(&format!(
        r#"
[[plan]]
name = "undo"
[[plan.step]]
type = "exec"
command = ["/bin/sh", "-c", "pwd; echo \"$STAGE\""]
env = {{ STAGE = "rollback" }}
cwd = "{}"
"#,
        dir.path().display()
    ));
    let step = &cfg.plans[0].steps[0];
    let out = run(step.action.clone(), &ctx(), step.timeout).await;
    assert!(out.ok, "{out:?}");
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(out.output, format!("{}\nrollback\n", canonical.display()));
}

#[tokio::test]
async fn exec_action_with_a_value_that_is_not_known_fails_before_running() {
    let dir = support::temp_dir();
    let marker = dir.path().join("ran");
    let mut c = ctx();
    c.to_revision = None;
    let spec = exec(&["touch", marker.to_str().unwrap(), "{to_revision}"]);
    let out = run(spec, &c, Duration::from_secs(5)).await;
    assert!(!out.ok);
    let error = out.error.unwrap();
    assert!(error.contains("{to_revision} is not known"), "{error}");
    assert!(!marker.exists(), "the command ran without its argument");
}

#[tokio::test]
async fn exec_action_that_fails_reports_its_exit_code_and_output() {
    let out = run(
        exec(&["/bin/sh", "-c", "echo 'kubectl: forbidden' >&2; exit 4"]),
        &ctx(),
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.ok);
    assert_eq!(out.error.as_deref(), Some("exit 4"));
    assert_eq!(out.output, "kubectl: forbidden\n");
}

#[tokio::test]
async fn exec_action_that_runs_past_its_timeout_is_killed_with_its_children() {
    let spec = exec(&["/bin/sh", "-c", "sleep 30 & echo \"$!\"; wait"]);
    let started = Instant::now();
    let out = run(spec, &ctx(), Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.ok);
    assert_eq!(
        out.error.as_deref(),
        Some("timed out after 500ms and was killed")
    );
    let child: u32 = out.output.trim().parse().expect("the background pid");
    support::poll_until(Duration::from_secs(5), || support::process_is_gone(child))
        .await
        .unwrap_or_else(|_| panic!("{child} survived the step's timeout"));
}

#[tokio::test]
async fn exec_action_whose_program_is_missing_fails_naming_it() {
    let out = run(
        exec(&["/opt/missing/rollback"]),
        &ctx(),
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.ok);
    assert_eq!(
        out.error.as_deref(),
        Some(r#"program "/opt/missing/rollback" not found"#)
    );
}

/// A deploy directory: `releases/<name>` for each name and a `current` link.
struct Deploy {
    dir: tempfile::TempDir,
}

impl Deploy {
    fn new(releases: &[&str], current: &str, relative: bool) -> Deploy {
        let dir = support::temp_dir();
        for r in releases {
            std::fs::create_dir_all(dir.path().join("releases").join(r)).unwrap();
        }
        let target = if relative {
            Path::new("releases").join(current)
        } else {
            dir.path().join("releases").join(current)
        };
        std::os::unix::fs::symlink(target, dir.path().join("current")).unwrap();
        Deploy { dir }
    }

    fn spec(&self, restart: Option<&[&str]>) -> ActionSpec {
        ActionSpec::ReleaseSwitch(ReleaseSwitchSpec {
            current: self.dir.path().join("current"),
            releases: self.dir.path().join("releases"),
            restart: restart.map(argv),
        })
    }

    fn link(&self) -> std::path::PathBuf {
        std::fs::read_link(self.dir.path().join("current")).unwrap()
    }

    /// Every entry of the deploy directory, to see that no temporary link was left.
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn release_switch_repoints_a_relative_link_and_keeps_it_relative() {
    let d = Deploy::new(&["v1", "v2"], "v2", true);
    let out = run(d.spec(None), &ctx(), Duration::from_secs(5)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(d.link(), Path::new("releases/v1"));
    assert!(
        out.output.ends_with("current: v2 -> v1\n"),
        "{}",
        out.output
    );
    assert_eq!(d.entries(), ["current", "releases"]);
}

#[tokio::test]
async fn release_switch_keeps_an_absolute_link_absolute() {
    let d = Deploy::new(&["v1", "v2"], "v2", false);
    let out = run(d.spec(None), &ctx(), Duration::from_secs(5)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(d.link(), d.dir.path().join("releases/v1"));
}

#[tokio::test]
async fn release_switch_refuses_when_someone_else_already_moved_current() {
    let d = Deploy::new(&["v1", "v2", "v3"], "v3", true);
    let out = run(d.spec(None), &ctx(), Duration::from_secs(5)).await;
    assert!(!out.ok);
    let error = out.error.unwrap();
    assert!(error.contains("points at v3, not at v2"), "{error}");
    assert!(error.contains("nothing changed"), "{error}");
    assert_eq!(d.link(), Path::new("releases/v3"));
}

#[tokio::test]
async fn release_switch_refuses_when_the_release_directory_is_missing() {
    let d = Deploy::new(&["v2"], "v2", true);
    let out = run(d.spec(None), &ctx(), Duration::from_secs(5)).await;
    assert!(!out.ok);
    let error = out.error.unwrap();
    assert!(
        error.starts_with("release directory ") && error.ends_with("releases/v1 does not exist"),
        "{error}"
    );
    assert_eq!(d.link(), Path::new("releases/v2"));
}

#[tokio::test]
async fn release_switch_refuses_when_the_revision_to_go_back_to_is_not_known() {
    let d = Deploy::new(&["v1", "v2"], "v2", true);
    let mut c = ctx();
    c.to_revision = None;
    let out = run(d.spec(None), &c, Duration::from_secs(5)).await;
    assert!(!out.ok);
    assert!(out.error.unwrap().contains("not known"));
    assert_eq!(d.link(), Path::new("releases/v2"));
}

#[tokio::test]
async fn release_switch_refuses_a_revision_that_is_a_path() {
    let d = Deploy::new(&["v1", "v2"], "v2", true);
    let mut c = ctx();
    c.to_revision = Some("../releases/v1".to_owned());
    let out = run(d.spec(None), &c, Duration::from_secs(5)).await;
    assert!(!out.ok);
    assert!(out.error.unwrap().contains("not a plain directory name"));
    assert_eq!(d.link(), Path::new("releases/v2"));
}

#[tokio::test]
async fn release_switch_refuses_to_replace_a_current_that_is_not_a_symlink() {
    let dir = support::temp_dir();
    std::fs::create_dir_all(dir.path().join("releases/v1")).unwrap();
    std::fs::create_dir_all(dir.path().join("current")).unwrap();
    let spec = ActionSpec::ReleaseSwitch(ReleaseSwitchSpec {
        current: dir.path().join("current"),
        releases: dir.path().join("releases"),
        restart: None,
    });
    let out = run(spec, &ctx(), Duration::from_secs(5)).await;
    assert!(!out.ok);
    assert!(out.error.unwrap().contains("is not a symlink"));
    assert!(dir.path().join("current").is_dir());
}

#[tokio::test]
async fn release_switch_runs_the_restart_command_with_the_incident() {
    let d = Deploy::new(&["v1", "v2"], "v2", true);
    let restart: &[&str] = &[
        "/bin/sh",
        "-c",
        "echo \"restarting on $REARGUARD_TO_REVISION for $1\"",
        "sh",
        "{incident}",
    ];
    let out = run(d.spec(Some(restart)), &ctx(), Duration::from_secs(5)).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.output
            .ends_with("current: v2 -> v1\nrestarting on v1 for inc-7\n"),
        "{}",
        out.output
    );
}

#[tokio::test]
async fn release_switch_whose_restart_fails_fails_but_stays_switched() {
    let d = Deploy::new(&["v1", "v2"], "v2", true);
    let restart: &[&str] = &["/bin/sh", "-c", "echo 'unit not found' >&2; exit 5"];
    let out = run(d.spec(Some(restart)), &ctx(), Duration::from_secs(5)).await;
    assert!(!out.ok);
    let error = out.error.unwrap();
    assert!(
        error.contains("from v2 to v1, but the restart command failed: exit 5"),
        "{error}"
    );
    assert!(out.output.contains("unit not found"), "{}", out.output);
    assert_eq!(d.link(), Path::new("releases/v1"));
}

/// What the receiver saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A receiver answering `status`, with the request's `authorization` header echoed in
/// its body, as careless services do.
async fn receiver(status: StatusCode) -> (support::TestServer, Log) {
    let log: Log = Arc::default();
    let handler = move |State(log): State<Log>, uri: Uri, headers: HeaderMap, body: Bytes| async move {
        let echoed = headers
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        log.lock().unwrap().push(Seen {
            uri: uri.to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        (status, format!("received with authorization {echoed}"))
    };
    let app = Router::new()
        .route("/{*path}", post(handler))
        .with_state(Arc::clone(&log));
    (support::serve(app).await, log)
}

fn http_spec(url: String, body: Option<&str>, headers: Vec<(String, HeaderValue)>) -> ActionSpec {
    ActionSpec::Http(HttpCallSpec {
        method: reqwest::Method::POST,
        url,
        headers,
        body: body.map(str::to_owned),
        expect_status: vec![200, 201, 202, 204],
    })
}

#[tokio::test]
async fn http_action_with_an_unexpected_status_fails_and_shows_the_answer() {
    let (server, log) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let out = run(
        http_spec(server.url("/hooks/rollback"), None, vec![]),
        &ctx(),
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.ok);
    assert_eq!(
        out.error.as_deref(),
        Some("status 500, expected one of 200, 201, 202, 204")
    );
    let first_line = format!("POST {} -> 500", server.url("/hooks/rollback"));
    assert!(
        out.output
            .starts_with(&format!("{first_line}\nreceived with")),
        "{}",
        out.output
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn http_action_escapes_values_for_the_url_and_the_json_body() {
    let (server, log) = receiver(StatusCode::OK).await;
    let mut c = ctx();
    c.incident = "a b/c?d&e".to_owned();
    c.to_revision = Some("v1 \"quoted\" \\ and\nnewline".to_owned());
    let url = format!("{}?rule={{rule}}", server.url("/incidents/{incident}"));
    let body = r#"{"text": "rolling back to {to_revision}", "meta": {"incident": "{incident}"}}"#;
    let out = run(
        http_spec(url, Some(body), vec![]),
        &c,
        Duration::from_secs(5),
    )
    .await;
    assert!(out.ok, "{out:?}");
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.uri, "/incidents/a%20b%2Fc%3Fd%26e?rule=errors");
    let json: serde_json::Value = serde_json::from_str(&seen.body).expect("the body is JSON");
    assert_eq!(
        json["text"],
        "rolling back to v1 \"quoted\" \\ and\nnewline"
    );
    assert_eq!(json["meta"]["incident"], "a b/c?d&e");
    assert_eq!(seen.headers["content-type"], "application/json");
}

#[tokio::test]
async fn http_action_never_shows_a_secret_header_value() {
    let (server, log) = receiver(StatusCode::FORBIDDEN).await;
    let secret = "Bearer s3cr3t-token-value";
    let headers = vec![
        (
            "Authorization".to_owned(),
            HeaderValue::Secret(SecretString::from(secret)),
        ),
        (
            "X-Team".to_owned(),
            HeaderValue::Plain("payments".to_owned()),
        ),
    ];
    let out = run(
        http_spec(server.url("/hooks/x"), Some("{}"), headers),
        &ctx(),
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.ok);
    let shown = format!("{out:?}");
    assert!(!shown.contains("s3cr3t-token-value"), "{shown}");
    assert!(
        !shown.contains("payments"),
        "header values are not echoed: {shown}"
    );
    assert!(out.output.contains("[redacted]"), "{}", out.output);
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.headers["authorization"], secret, "the secret was sent");
    assert_eq!(seen.headers["x-team"], "payments");
}

#[tokio::test]
async fn http_action_with_a_value_that_is_not_known_sends_nothing() {
    let (server, _log) = receiver(StatusCode::OK).await;
    let mut c = ctx();
    c.to_revision = None;
    let url = server.url("/deploy/{to_revision}");
    let out = run(http_spec(url, None, vec![]), &c, Duration::from_secs(5)).await;
    assert!(!out.ok);
    assert!(out.error.unwrap().contains("{to_revision} is not known"));
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn http_action_to_a_service_that_hangs_times_out() {
    let server = support::raw_server(support::Misbehave::Hang).await;
    let started = Instant::now();
    let out = run(
        http_spec(server.url("/hook"), None, vec![]),
        &ctx(),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.ok);
    assert_eq!(out.error.as_deref(), Some("timed out after 500ms"));
}
